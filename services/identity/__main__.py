"""`python -m services.identity` starts the identity service with settings from the environment."""

from libs.server import run_service
from libs.settings import load_settings
from services.identity.app import build
from services.identity.settings import IdentitySettings

if __name__ == "__main__":
    run_service(build, load_settings(IdentitySettings))
