"""Runnable examples (``twistd -n warpsocket --app warpsocket.examples.chat:setup``)."""
