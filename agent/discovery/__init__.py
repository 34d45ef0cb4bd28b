"""Discovery and membership: mDNS (DNS-SD) advertisement and browsing, heartbeats, the peer table."""
