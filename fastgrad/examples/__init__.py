"""Example models trained on data available offline (digits from scikit-learn, Python sources)."""
