"""The ScoringService gRPC servicer: protobuf in, one domain call, protobuf out."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import numpy as np
import orjson
from nextbest.scoring.v1 import scoring_service_pb2 as pb
from nextbest.scoring.v1 import scoring_service_pb2_grpc as pb_grpc
from opentelemetry import trace

from libs.errors import InvalidArgument
from libs.protoconv import to_timestamp
from services.scoring.artifacts import FeatureKind, ModelStatus
from services.scoring.domain import OfferColumns, RegisteredModel, ScoringService

FULL_NAME = pb.DESCRIPTOR.services_by_name["ScoringService"].full_name

# Matched by name so a renamed enum value fails at import, not at run time.
_STATUSES = {status: pb.ModelStatus.Value(f"MODEL_STATUS_{status.name}") for status in ModelStatus}
_FROM_PB = {value: status for status, value in _STATUSES.items()}
_KINDS = {kind: pb.FeatureType.Value(f"FEATURE_TYPE_{kind.name}") for kind in FeatureKind}


def model_info(model: RegisteredModel) -> pb.ModelInfo:
    info = pb.ModelInfo(
        name=model.name,
        use_case=model.use_case,
        version=model.version,
        status=_STATUSES[model.status],
        trained_at=to_timestamp(model.trained_at),
        feature_names=model.feature_names,
        metrics=model.metrics,
        training_rows=model.training_rows,
        features=[pb.FeatureSpec(name=f.name, type=_KINDS[f.kind], levels=f.levels) for f in model.features],
        allows_missing=model.allows_missing,
        row_counts=model.row_counts,
        params_json=orjson.dumps(model.params).decode(),
        parent_version=model.parent_version or "",
        traffic_share=model.traffic_share,
        registered_at=to_timestamp(model.registered_at),
        status_changed_at=to_timestamp(model.status_changed_at),
        artifact_key=model.artifact_path,
    )
    if model.training_window is not None:
        info.training_window.start.CopyFrom(to_timestamp(model.training_window[0]))
        info.training_window.end.CopyFrom(to_timestamp(model.training_window[1]))
    return info


def _status(value: int, field: str) -> ModelStatus:
    status = _FROM_PB.get(value)
    if status is None:
        raise InvalidArgument(field, "must be a model status")
    return status


class ScoringServicer(pb_grpc.ScoringServiceServicer):
    """Maps the ScoringService contract onto `ScoringService`."""

    def __init__(self, service: ScoringService) -> None:
        self.service = service

    async def Score(self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext) -> pb.ScoreResponse:
        span = trace.get_current_span()
        span.set_attribute("nextbest.customer_id", request.customer_id)  # the field exists for traces and logs
        # The protobuf maps and candidates are read in place by the domain: no per-request copies.
        scores = self.service.score(
            request.use_case,
            request.customer_features,
            request.candidates,
            request.customer_id,
            request.customer_categories,
            OfferColumns(request.offer_columns, request.offer_values),
        )
        span.set_attribute("nextbest.model_version", scores.model_version)
        return pb.ScoreResponse(
            model_name=scores.model_name,
            model_version=scores.model_version,
            model_status=_STATUSES[scores.model_status],
            scores=[
                pb.OfferScore(offer_id=offer_id, probability=probability)
                for offer_id, probability in zip(scores.offer_ids, scores.probabilities, strict=True)
            ],
        )

    async def Explain(self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext) -> pb.ExplainResponse:
        explanation = await self.service.explain(
            request.use_case,
            request.customer_features,
            request.candidates,
            request.customer_id,
            request.customer_categories,
            request.top_k,
            OfferColumns(request.offer_columns, request.offer_values),
        )
        return pb.ExplainResponse(
            model_name=explanation.model_name,
            model_version=explanation.model_version,
            model_status=_STATUSES[explanation.model_status],
            explanations=[
                pb.OfferExplanation(
                    offer_id=offer.offer_id,
                    probability=offer.probability,
                    base_log_odds=offer.base_log_odds,
                    contributions=[
                        pb.FeatureContribution(
                            feature=c.feature,
                            label=c.label,
                            value=c.value,
                            contribution=c.contribution,
                            direction=pb.DIRECTION_RAISES if c.contribution >= 0 else pb.DIRECTION_LOWERS,
                        )
                        for c in offer.contributions
                    ],
                )
                for offer in explanation.offers
            ],
        )

    async def ScoreBatch(
        self, request: pb.ScoreBatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ScoreBatchResponse]:
        values = np.fromiter(request.values, dtype=np.float64, count=len(request.values))
        columns = list(request.columns)
        rows = values.size // len(columns) if columns else 0
        row_ids = list(request.row_ids)
        if row_ids and len(row_ids) != rows:
            raise InvalidArgument("row_ids", f"must be empty or one per row ({rows}), got {len(row_ids)}")
        async for chunk in self.service.score_batch(request.use_case, request.version, columns, values):
            end = chunk.start_row + chunk.predictions.size
            yield pb.ScoreBatchResponse(
                model_version=chunk.model_version,
                start_row=chunk.start_row,
                predictions=chunk.predictions.tolist(),
                row_ids=row_ids[chunk.start_row : end] if row_ids else (),
            )

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        statuses = [_status(s, "statuses") for s in request.statuses]
        models = await self.service.list_models(request.use_case, statuses)
        return pb.ListModelsResponse(models=[model_info(model) for model in models])

    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.GetModelResponse:
        model = await self.service.get_model(request.use_case, request.version)
        return pb.GetModelResponse(model=model_info(model), card_json=orjson.dumps(model.card).decode())

    async def PromoteModel(
        self, request: pb.PromoteModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.PromoteModelResponse:
        target = _status(request.target, "target")
        promoted, replaced = await self.service.promote(
            request.use_case, request.version, target, request.traffic_share
        )
        return pb.PromoteModelResponse(model=model_info(promoted), replaced_version=replaced or "")

    async def RetireModel(
        self, request: pb.RetireModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.RetireModelResponse:
        retired = await self.service.retire(request.use_case, request.version)
        return pb.RetireModelResponse(model=model_info(retired))
