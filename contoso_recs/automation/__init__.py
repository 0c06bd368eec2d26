"""Jobs, sensors and schedules that keep the lake and the recommendations fresh."""
