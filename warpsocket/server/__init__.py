"""The Twisted server: hub, protocol, HTTP endpoints and the service that composes them."""
