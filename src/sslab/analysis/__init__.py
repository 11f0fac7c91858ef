"""Looking at what a run learned: PCA, t-SNE, image maps, k-means tiles, attention maps and the HTML report.

Modules import matplotlib and scikit-learn only inside the functions that need them, so `sslab --help`
stays fast.
"""
