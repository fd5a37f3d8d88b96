"""Measurements of a label map: region volumes, enhancing lesions with their RANO diameters, follow-up response."""
