"""`digestguard pin`: pin the images of manifests before they reach Git or the cluster."""
