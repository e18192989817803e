"""Dataset interop: read and write other recording formats in the unified space.

* :mod:`~robot_policy.data.interop.mapping`: mappings as data (``configs/mapping/*.yaml``): which source
  feature, topic or dataset fills which native field of an embodiment;
* :mod:`~robot_policy.data.interop.importer`: the import loop every reader shares (streaming, resumable);
* :mod:`~robot_policy.data.interop.lerobot`: LeRobot v3.0 datasets (parquet + mp4), with pyarrow and PyAV;
* :mod:`~robot_policy.data.interop.rosbag`: rosbag2 recordings (mcap, sqlite3), with ``rosbags``;
* :mod:`~robot_policy.data.interop.robomimic`: robomimic HDF5 files, with h5py.

Readers and writers import their format library when called, so importing the store does not load them.
"""

from robot_policy.data.interop.importer import ImportSummary, SourceEpisode
from robot_policy.data.interop.mapping import MappingError, SourceMapping, available_mappings, load_mapping

__all__ = ["ImportSummary", "MappingError", "SourceEpisode", "SourceMapping", "available_mappings", "load_mapping"]
