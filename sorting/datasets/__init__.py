"""Data layer: manifests, importers, image loading, synthetic world, preprocessing, augmentation."""
