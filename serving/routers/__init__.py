"""One router per resource; ``serving.app`` combines them."""
