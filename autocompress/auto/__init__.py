"""Auto mode (`autocompress optimize`, `strategy_config={"Auto": {...}}`, `Auto:` in a run YAML): the
fastest model within an accuracy budget on the user's deployment target, searched across strategies.

`config` validates the Auto section, `candidates` plans what to try (cheap first), `search` runs,
measures and keeps the best so far, `report` writes report.md / report.html."""
