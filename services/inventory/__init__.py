"""Inventory service: stock by SKU variant (size, colour) and location (store, warehouse); fast availability."""
