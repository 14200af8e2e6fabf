"""The legacy (`*.pdmodel`) backend of the program layer: every program edit the strategies make (see `program`)."""
