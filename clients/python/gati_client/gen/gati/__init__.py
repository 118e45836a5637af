__all__ = ['ttypes', 'constants', 'Gati', 'BaseWorker', 'CacheWorker', 'Selector', 'Trainer']
