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
from contoso_recs.lake.quarantine import QUARANTINE_TABLE, report_quarantine, write_quarantine
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
# Reasons a file is refused for what it is (its name or its bytes), whatever else landed.
FILE_REASONS = ("invalid_product_id", "unreadable_image")
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
    """Catalogue new or changed product images and compute their features.

    The manifest mirrors the container: a product whose file was deleted, or replaced by one
    that cannot be read, leaves the manifest and the features (its picture is no longer there).
    The features are written before the manifest, which records what is loaded: a run
    interrupted between the two reads the file again next time.
    """
    landed = landing_zone.list_files(PRODUCT_IMAGES_CONTAINER)
    known = lake.read_or_empty("product_images", MANIFEST_SCHEMA)
    known_fingerprints = set(known.select("path", "size_bytes", "landed_at").iter_rows())
    # A file quarantined for what it holds is not read again until it changes (a new upload is
    # a new fingerprint): it stays counted once, in the quarantine table. A duplicate is read
    # again, as it loads once the file it duplicated is gone.
    rejected = quarantined_fingerprints(lake, FILE_REASONS)
    unchanged_rejects = [f for f in landed if f.fingerprint in rejected]
    changed = [
        f
        for f in landed
        if (f.path, f.size, f.modified_at) not in known_fingerprints
        and f.fingerprint not in rejected
    ]

    described = [
        (file, *describe_image(file, landing_zone.read_bytes(PRODUCT_IMAGES_CONTAINER, file.path)))
        for file in changed
    ]
    # One image per product: a second file for a product (12.png beside 012.png) is a duplicate
    # while the first is in the container and readable (a broken re-upload of it frees the
    # product for the second).
    landed_paths = {f.path for f in landed}
    readable = {file.path for file, manifest, _, _ in described if manifest}
    reread = {file.path for file in changed}
    owner = {
        p: path
        for p, path in known.select("product_id", "path").iter_rows()
        if path in landed_paths and (path not in reread or path in readable)
    }
    manifests, features, rejects = [], [], []
    for file, manifest, feature, reject in described:
        if manifest and owner.setdefault(manifest["product_id"], file.path) != file.path:
            reject = {"source_ref": file.path, "raw": file.fingerprint, "reason": "duplicate"}
        if reject:
            rejects.append(reject)
        else:
            manifests.append(manifest)
            features.append(feature)

    landed_fingerprints = {(f.path, f.size, f.modified_at) for f in landed}
    loaded = {m["product_id"] for m in manifests}
    retired = sorted(
        p
        for p, *fingerprint in known.select(
            "product_id", "path", "size_bytes", "landed_at"
        ).iter_rows()
        if tuple(fingerprint) not in landed_fingerprints and p not in loaded
    )
    manifest_rows = pl.DataFrame(manifests, schema=MANIFEST_SCHEMA)
    feature_rows = pl.DataFrame(features, schema=FEATURES_SCHEMA)
    features_write = lake.upsert("product_image_features", feature_rows, ["product_id"]).then(
        lake.delete_keys("product_image_features", "product_id", retired)
    )
    manifest_write = lake.upsert("product_images", manifest_rows, ["product_id"]).then(
        lake.delete_keys("product_images", "product_id", retired)
    )
    write_quarantine(lake, "product_images", pl.DataFrame(rejects, schema=QUARANTINE_SCHEMA))
    report_quarantine(context, lake)
    # A file loaded now is no longer a reject: the quarantine keeps the files not loaded.
    forget_rejects(lake, [m["path"] for m in manifests])

    context.log.info(
        f"product images: {len(landed)} files landed, {len(changed)} read (new or changed), "
        f"{len(manifests)} loaded, {len(rejects)} quarantined, {len(unchanged_rejects)} "
        f"quarantined before and unchanged, {len(retired)} products' images gone (deleted "
        f"or no longer readable); "
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
        "images_gone": dg.MetadataValue.int(len(retired)),
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


def forget_rejects(lake: Lake, paths: list[str]) -> None:
    """Delete the quarantine rows of these image files."""
    if not paths or not lake.exists(QUARANTINE_TABLE):
        return
    quoted = ", ".join("'" + path.replace("'", "''") + "'" for path in paths)
    lake.delete_where(
        QUARANTINE_TABLE, f"target_table = 'product_images' AND source_ref IN ({quoted})"
    )


def quarantined_fingerprints(lake: Lake, reasons: tuple[str, ...]) -> set[str]:
    """Fingerprints of the image files quarantined for `reasons` (the quarantine's `raw`)."""
    if not lake.exists(QUARANTINE_TABLE):
        return set()
    rows = lake.scan(QUARANTINE_TABLE).filter(
        (pl.col("target_table") == "product_images") & pl.col("reason").is_in(reasons)
    )
    return set(rows.select("raw").collect()["raw"].to_list())


def product_images_defs() -> dg.Definitions:
    source = dg.AssetSpec(
        keys.PRODUCT_IMAGES_SOURCE,
        description="Product photographs in the product-images Blob container.",
        group_name=keys.SOURCES_GROUP,
        kinds={"azure", "blob"},
    )
    return dg.Definitions(assets=[source, extract_product_images])
