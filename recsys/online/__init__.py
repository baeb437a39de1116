"""What serving reads per request, without Ray: a dataset's online features and the retrieval export's query tower
and item index. The serving app and the offline list evaluation use the same objects."""
