"""Reports: markdown tables, self-contained HTML, Pareto plots."""
