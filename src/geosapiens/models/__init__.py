"""Model side: Sapiens backbone on timm, heads, heatmap codec, geometric critics, pose prior."""
