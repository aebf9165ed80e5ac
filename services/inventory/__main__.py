"""`python -m services.inventory` runs the inventory service."""

from libs.server import run_service
from libs.settings import load_settings
from services.inventory.app import build
from services.inventory.settings import InventorySettings

if __name__ == "__main__":
    run_service(build, load_settings(InventorySettings))
