"""Writing window revisions, raw events and rejections to ClickHouse."""
