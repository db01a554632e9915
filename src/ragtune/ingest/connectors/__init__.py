"""Connectors: remote document sources (``s3://bucket/prefix``), chosen by URI scheme through the
plugin registry (``ragtune.plugins``, kind ``connectors``), synced by ETag (``Ragtune.sync_source``).

    connector = plugins.connectors.get("s3")("s3://docs/hr/", settings)
    for obj in connector.list():          # Iterator[RemoteObject]: uri, etag, size, modified, read()
        ...
"""

from ragtune.ingest.connectors.base import Connector, RemoteObject, changed_objects, load_objects

__all__ = ["Connector", "RemoteObject", "changed_objects", "load_objects"]
