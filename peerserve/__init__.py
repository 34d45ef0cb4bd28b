"""peerserve: decentralised ML model serving on a cluster of edge boards."""

__version__ = "0.1.0"
