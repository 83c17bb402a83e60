"""The report's sections, one module per topic; each function takes the report being built
(`pipeline.reporting.report.Report`) and adds its text and plots, or nothing when the run lacks the data."""
