"""Time series: aeon's shipped data sets and one's own series files; classification, regression, forecasting."""
