"""The InventoryService gRPC servicer: protobuf in, domain call, protobuf out (errors are mapped by libs.server)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from nextbest.inventory.v1 import inventory_service_pb2 as pb
from nextbest.inventory.v1 import inventory_service_pb2_grpc as pb_grpc

from libs.changefeed import ChangeFeed
from libs.protoconv import to_timestamp
from services.inventory.domain import Availability, Inventory, StockChange

FULL_NAME = "nextbest.inventory.v1.InventoryService"

_KINDS = {"store": pb.LOCATION_KIND_STORE, "warehouse": pb.LOCATION_KIND_WAREHOUSE}


def _availability(a: Availability) -> pb.Availability:
    return pb.Availability(
        sku=a.sku,
        product_id=a.product_id,
        size=a.size,
        colour=a.colour,
        location_id=a.location_id,
        location_kind=_KINDS[a.location_kind],
        on_hand=a.on_hand,
        updated_at=to_timestamp(a.updated_at),
    )


def _change(change: pb.StockChange) -> StockChange:
    which = change.WhichOneof("change")
    return StockChange(
        sku=change.sku,
        location_id=change.location_id,
        set_on_hand=change.set_on_hand if which == "set_on_hand" else None,
        adjust_by=change.adjust_by if which == "adjust_by" else None,
    )


class InventoryServicer(pb_grpc.InventoryServiceServicer):
    def __init__(self, inventory: Inventory, changes: ChangeFeed) -> None:
        self._inventory = inventory
        self._changes = changes

    async def CheckAvailability(
        self, request: pb.CheckAvailabilityRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckAvailabilityResponse:
        result = await self._inventory.check_availability(request.skus, request.product_ids, request.location_ids)
        return pb.CheckAvailabilityResponse(
            availability=[_availability(a) for a in result.availability], unknown=result.unknown
        )

    async def UpdateStock(
        self, request: pb.UpdateStockRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateStockResponse:
        result = await self._inventory.update_stock(request.update_id, [_change(c) for c in request.changes])
        return pb.UpdateStockResponse(
            duplicate=result.duplicate, availability=[_availability(a) for a in result.availability]
        )

    async def WatchChanges(
        self, request: pb.WatchChangesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchChangesResponse]:
        async for product_ids in self._changes.watch():
            yield pb.WatchChangesResponse(product_ids=product_ids)
