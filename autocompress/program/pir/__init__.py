"""The PIR (`*.json`) backend of the program layer: native reads; edits go through the legacy backend (see `program`)."""
