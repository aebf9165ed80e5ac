"""The ScoringService gRPC servicer: protobuf in, one domain call, protobuf out."""

from __future__ import annotations

import grpc
from nextbest.scoring.v1 import scoring_service_pb2 as pb
from nextbest.scoring.v1 import scoring_service_pb2_grpc as pb_grpc
from opentelemetry import trace

from libs.protoconv import to_timestamp
from services.scoring.artifacts import ModelStatus
from services.scoring.domain import RegisteredModel, ScoringService

FULL_NAME = pb.DESCRIPTOR.services_by_name["ScoringService"].full_name

# Matched by name so a renamed enum value fails at import, not at run time.
_STATUSES = {status: pb.ModelStatus.Value(f"MODEL_STATUS_{status.name}") for status in ModelStatus}


def _model_info(model: RegisteredModel) -> pb.ModelInfo:
    return pb.ModelInfo(
        name=model.name,
        use_case=model.use_case,
        version=model.version,
        status=_STATUSES[model.status],
        trained_at=to_timestamp(model.trained_at),
        feature_names=model.feature_names,
        metrics=model.metrics,
        training_rows=model.training_rows,
    )


class ScoringServicer(pb_grpc.ScoringServiceServicer):
    """Maps the ScoringService contract onto `ScoringService`."""

    def __init__(self, service: ScoringService) -> None:
        self.service = service

    async def Score(self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext) -> pb.ScoreResponse:
        span = trace.get_current_span()
        span.set_attribute("nextbest.customer_id", request.customer_id)  # the field exists for traces and logs
        # The protobuf map and candidates are read in place by the domain: no per-request copies.
        scores = self.service.score(request.use_case, request.customer_features, request.candidates)
        span.set_attribute("nextbest.model_version", scores.model_version)
        return pb.ScoreResponse(
            model_name=scores.model_name,
            model_version=scores.model_version,
            scores=[
                pb.OfferScore(offer_id=offer_id, probability=probability)
                for offer_id, probability in zip(scores.offer_ids, scores.probabilities, strict=True)
            ],
        )

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        models = await self.service.list_models(request.use_case)
        return pb.ListModelsResponse(models=[_model_info(model) for model in models])
