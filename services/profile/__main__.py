"""`python -m services.profile` starts the profile service with settings from the environment."""

from libs.server import run_service
from libs.settings import load_settings
from services.profile.app import build
from services.profile.settings import ProfileSettings

if __name__ == "__main__":
    run_service(build, load_settings(ProfileSettings))
