"""`python -m services.scoring` starts the scoring service with settings from the environment."""

from libs.server import run_service
from libs.settings import load_settings
from services.scoring.app import build
from services.scoring.settings import ScoringSettings

if __name__ == "__main__":
    run_service(build, load_settings(ScoringSettings))
