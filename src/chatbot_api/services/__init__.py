"""The service layer: what the API does, apart from how requests arrive over HTTP."""
