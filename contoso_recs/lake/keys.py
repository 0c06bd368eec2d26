"""Asset keys of the source systems and lake tables, shared by every stage."""

import dagster as dg

TRANSACTIONS_SOURCE = dg.AssetKey(["source", "transactions"])
CLICKSTREAM_SOURCE = dg.AssetKey(["source", "clickstream"])
PRODUCT_IMAGES_SOURCE = dg.AssetKey(["source", "product_images"])
CRM_SOURCE = dg.AssetKey(["source", "crm_contacts"])

PRODUCTS = dg.AssetKey(["lake", "products"])
ORDERS = dg.AssetKey(["lake", "orders"])
ORDER_LINES = dg.AssetKey(["lake", "order_lines"])
PROMOTIONS = dg.AssetKey(["lake", "promotions"])
CUSTOMERS = dg.AssetKey(["lake", "customers"])
PRODUCT_VIEWS = dg.AssetKey(["lake", "product_views"])
PRODUCT_IMAGES = dg.AssetKey(["lake", "product_images"])
PRODUCT_IMAGE_FEATURES = dg.AssetKey(["lake", "product_image_features"])
# Written by the extracts beside their tables, not by a step of its own.
QUARANTINE = dg.AssetKey(["lake", "quarantine"])

LAKE_TABLES = [
    PRODUCTS,
    ORDERS,
    ORDER_LINES,
    PROMOTIONS,
    CUSTOMERS,
    PRODUCT_VIEWS,
    PRODUCT_IMAGES,
    PRODUCT_IMAGE_FEATURES,
]

LAKE_GROUP = "lake"
SOURCES_GROUP = "sources"


def table_name(key: dg.AssetKey) -> str:
    """The lake table behind a lake asset key: `lake/orders` is the table `orders`."""
    return key.path[-1]
