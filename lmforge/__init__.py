"""lmforge."""
