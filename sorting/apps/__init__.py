"""Applications built on the library rooms (the operator's console); they may import serving and training."""
