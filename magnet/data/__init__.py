"""Input pipeline: tokenisation, image transforms and referring datasets."""
