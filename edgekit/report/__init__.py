"""report.json schema (`schema`) and its self-contained HTML rendering (`html`)."""
