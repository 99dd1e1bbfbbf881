"""fedmed's Flower ClientApp."""
