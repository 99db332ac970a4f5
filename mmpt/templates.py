"""Hand-written zero-shot prompt templates, keyed by dataset registry name (CoOp's CUSTOM_TEMPLATES)."""

DEFAULT_TEMPLATE = "a photo of a {}."

CUSTOM_TEMPLATES = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}


def template_for(dataset_name):
    """The template of a dataset registry name; DEFAULT_TEMPLATE for datasets without one."""
    return CUSTOM_TEMPLATES.get(dataset_name, DEFAULT_TEMPLATE)
