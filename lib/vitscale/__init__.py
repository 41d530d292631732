"""vitscale: a workbench for studying how Vision Transformers scale."""
