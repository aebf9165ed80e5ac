"""`python -m services.decision` starts the decision service."""

from libs.server import run_service
from libs.settings import load_settings
from services.decision.app import build
from services.decision.settings import DecisionSettings

run_service(build, load_settings(DecisionSettings))
