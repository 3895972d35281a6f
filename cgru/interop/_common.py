"""What every converter shares: importing the framework it needs, with an install hint."""


def require(module, install):
    """The module, or an ImportError saying what to install."""
    try:
        return __import__(module)
    except ImportError as e:
        raise ImportError(f"this conversion needs {module}: pip install {install} ({e})") from None
