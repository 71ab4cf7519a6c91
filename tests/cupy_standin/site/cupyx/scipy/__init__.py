"""``cupyx.scipy`` exists in CuPy; the stand-in models none of its routines."""
