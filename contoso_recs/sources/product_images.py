"""Product images from Blob storage: a manifest of the files and features computed from them."""

import hashlib
import io
from pathlib import PurePosixPath

import dagster as dg
import numpy as np
import polars as pl
from PIL import Image, UnidentifiedImageError

from contoso_recs.lake import keys
from contoso_recs.lake.conform import QUARANTINE_SCHEMA
from contoso_recs.lake.quarantine import QUARANTINE_TABLE, write_quarantine
from contoso_recs.resources.lake import Lake
from contoso_recs.resources.landing import PRODUCT_IMAGES_CONTAINER, LandedFile, LandingZone

THUMBNAIL = (16, 16)
MAX_ID_DIGITS = 18
HUE_BINS = 8
FEATURE_NAMES = [
    "mean_red",
    "mean_green",
    "mean_blue",
    "std_red",
    "std_green",
    "std_blue",
    *(f"hue_{i}" for i in range(HUE_BINS)),
]
MANIFEST_SCHEMA = {
    "product_id": pl.Int64,
    "path": pl.String,
    "size_bytes": pl.Int64,
    "sha256": pl.String,
    "width": pl.Int32,
    "height": pl.Int32,
    "landed_at": pl.Datetime("us", "UTC"),
}
FEATURES_SCHEMA = {
    "product_id": pl.Int64,
    "sha256": pl.String,
    "features": pl.List(pl.Float32),
}


def image_features(image: Image.Image) -> np.ndarray:
    """Colour summary of a product image: mean and spread per channel and a hue histogram."""
    rgb = np.asarray(image.convert("RGB").resize(THUMBNAIL), dtype=np.float32) / 255.0
    pixels = rgb.reshape(-1, 3)
    hue = np.asarray(image.convert("RGB").resize(THUMBNAIL).convert("HSV"))[..., 0].ravel()
    histogram, _ = np.histogram(hue, bins=HUE_BINS, range=(0, 256))
    return np.concatenate(
        [pixels.mean(axis=0), pixels.std(axis=0), histogram / max(hue.size, 1)]
    ).astype(np.float32)


def describe_image(
    landed: LandedFile, content: bytes
) -> tuple[dict | None, dict | None, dict | None]:
    """Manifest row, feature row and quarantine row (exactly one of the last two is set)."""
    stem = PurePosixPath(landed.path).stem
    reject = {"source_ref": landed.path, "raw": landed.fingerprint}
    if not (stem.isascii() and stem.isdigit() and len(stem) <= MAX_ID_DIGITS):
        return None, None, {**reject, "reason": "invalid_product_id"}
    try:
        with Image.open(io.BytesIO(content)) as image:
            image.load()
            features = image_features(image)
            width, height = image.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError):
        return None, None, {**reject, "reason": "unreadable_image"}

    digest = hashlib.sha256(content).hexdigest()
    manifest = {
        "product_id": int(stem),
        "path": landed.path,
        "size_bytes": landed.size,
        "sha256": digest,
        "width": width,
        "height": height,
        "landed_at": landed.modified_at,
    }
    return manifest, {"product_id": int(stem), "sha256": digest, "features": features}, None


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            keys.PRODUCT_IMAGES,
            deps=[keys.PRODUCT_IMAGES_SOURCE],
            description="Manifest of product images: one row per product with its image file.",
            group_name=keys.LAKE_GROUP,
            kinds={"delta", "polars"},
        ),
        dg.AssetSpec(
            keys.PRODUCT_IMAGE_FEATURES,
            deps=[keys.PRODUCT_IMAGES],
            description="Colour features of each product image, for the product tower.",
            group_name=keys.LAKE_GROUP,
            kinds={"delta", "pillow"},
        ),
    ],
    can_subset=False,
    pool="blob_storage",
)
def extract_product_images(
    context: dg.AssetExecutionContext, landing_zone: LandingZone, lake: Lake
):
    """Catalogue new or changed product images and compute their features."""
    landed = landing_zone.list_files(PRODUCT_IMAGES_CONTAINER)
    known = lake.read_or_empty("product_images", MANIFEST_SCHEMA)
    known_fingerprints = set(known.select("path", "size_bytes", "landed_at").iter_rows())
    # A file quarantined before is not read again until it changes (a new upload is a new
    # fingerprint): it stays counted once, in the quarantine table.
    rejected = quarantined_fingerprints(lake)
    unchanged_rejects = [f for f in landed if f.fingerprint in rejected]
    changed = [
        f
        for f in landed
        if (f.path, f.size, f.modified_at) not in known_fingerprints
        and f.fingerprint not in rejected
    ]

    # One image per product: a second file for a product (12.png beside 012.png) is a duplicate.
    owner = dict(known.select("product_id", "path").iter_rows())
    manifests, features, rejects = [], [], []
    for file in changed:
        manifest, feature, reject = describe_image(
            file, landing_zone.read_bytes(PRODUCT_IMAGES_CONTAINER, file.path)
        )
        if manifest and owner.setdefault(manifest["product_id"], file.path) != file.path:
            reject = {"source_ref": file.path, "raw": file.fingerprint, "reason": "duplicate"}
        if reject:
            rejects.append(reject)
        else:
            manifests.append(manifest)
            features.append(feature)

    manifest_rows = pl.DataFrame(manifests, schema=MANIFEST_SCHEMA)
    feature_rows = pl.DataFrame(features, schema=FEATURES_SCHEMA)
    manifest_write = lake.upsert("product_images", manifest_rows, ["product_id"])
    features_write = lake.upsert("product_image_features", feature_rows, ["product_id"])
    write_quarantine(lake, "product_images", pl.DataFrame(rejects, schema=QUARANTINE_SCHEMA))

    context.log.info(
        f"product images: {len(landed)} files landed, {len(changed)} read (new or changed), "
        f"{len(manifests)} loaded, {len(rejects)} quarantined, {len(unchanged_rejects)} "
        f"quarantined before and unchanged; "
        f"{manifest_write.uri} {manifest_write.state}"
    )
    reasons = pl.DataFrame(rejects, schema=QUARANTINE_SCHEMA)["reason"].value_counts(sort=True)
    accounting = {
        "quarantined_by_reason": dg.MetadataValue.json(dict(reasons.iter_rows())),
        "files_landed": dg.MetadataValue.int(len(landed)),
        "rows_read": dg.MetadataValue.int(len(changed)),
        "rows_loaded": dg.MetadataValue.int(len(manifests)),
        "rows_quarantined": dg.MetadataValue.int(len(rejects)),
        "files_quarantined_before": dg.MetadataValue.int(len(unchanged_rejects)),
    }
    note = {}
    if not landed:
        note = {"note": dg.MetadataValue.text("The product-images container holds no images.")}
    yield dg.MaterializeResult(
        asset_key=keys.PRODUCT_IMAGES,
        metadata={**lake.table_metadata(manifest_write), **accounting, **note},
    )
    yield dg.MaterializeResult(
        asset_key=keys.PRODUCT_IMAGE_FEATURES,
        metadata={
            **lake.table_metadata(features_write),
            "feature_names": dg.MetadataValue.json(FEATURE_NAMES),
            **note,
        },
    )


def quarantined_fingerprints(lake: Lake) -> set[str]:
    """Fingerprints of the image files in the quarantine (its `raw` column for this table)."""
    if not lake.exists(QUARANTINE_TABLE):
        return set()
    rows = lake.scan(QUARANTINE_TABLE).filter(pl.col("target_table") == "product_images")
    return set(rows.select("raw").collect()["raw"].to_list())


def product_images_defs() -> dg.Definitions:
    source = dg.AssetSpec(
        keys.PRODUCT_IMAGES_SOURCE,
        description="Product photographs in the product-images Blob container.",
        group_name=keys.SOURCES_GROUP,
        kinds={"azure", "blob"},
    )
    return dg.Definitions(assets=[source, extract_product_images])
