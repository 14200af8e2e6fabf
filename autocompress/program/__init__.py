"""The program layer (issue 9): every edit the strategies make to a Paddle program, for the legacy
(`*.pdmodel`) and the PIR (`*.json`) format. First brick: `convert.convert_to_pir`."""
