"""One module per technology; each is found through ``headwater.registry`` by URL scheme."""
