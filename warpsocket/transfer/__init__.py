"""Large transfers in chunks: the ``chunks`` protocol extension.

``wire`` is the shared envelope format, ``server`` the hub's side (uploads
to the application, relays through a disk spool) and ``client`` the Python
client's side. docs/protocol.md "Extension: chunked transfers" specifies it.
"""
