"""Layer 3: files. The parallel snapshot store and XDMF sidecars for ParaView."""
from ddrom.io.store import (
    SCHEMA, SCHEMA_VERSION, SimulationInfo, SimulationWriter, SnapshotStore, StoreOptions, von_mises,
)
from ddrom.io.xdmf import (
    XdmfField, XdmfSeries, read_data_item, store_xdmf_path, write_store_xdmf, write_xdmf_fields,
)

__all__ = [
    "SCHEMA", "SCHEMA_VERSION", "SimulationInfo", "SimulationWriter", "SnapshotStore", "StoreOptions", "von_mises",
    "XdmfField", "XdmfSeries", "read_data_item", "store_xdmf_path", "write_store_xdmf",
    "write_xdmf_fields",
]
