"""AI results: bulk annotations and segmentations, their checks, codes and links to slides."""
