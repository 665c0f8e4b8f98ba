"""Everything about the published artefact: schema, writer, card, Hub, loading."""
