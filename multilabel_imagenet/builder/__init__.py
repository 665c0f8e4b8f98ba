"""Everything that computes labels: proposals, region labeler, aggregation, the build pipeline."""
