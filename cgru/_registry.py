"""Classes known by name (initializers, losses, optimizers, schedules): look one up from a name
or an instance, and write or read one as {"class": name, "config": constructor arguments}."""


class Configurable:
    """A class known by name whose constructor arguments are its config: repr shows them."""

    def get_config(self):
        return {}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def resolve(identifier, base, by_name, argument, module):
    """`identifier` itself when it is a `base`, else a default instance of the class it names."""
    if isinstance(identifier, base):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in by_name:
        return by_name[identifier.lower()]()
    raise ValueError(f"{argument} must be one of {sorted(by_name)} or a cgru.{module} instance, "
                     f"got {identifier!r}")


def serialize(obj):
    return {"class": type(obj).__name__, "config": obj.get_config()}


def deserialize(spec, classes):
    """An instance from serialize()'s dict; `classes` are the classes it may name."""
    return {cls.__name__: cls for cls in classes}[spec["class"]](**spec["config"])
