package rail.peer;

import java.util.Map;
import org.apache.kafka.streams.state.RocksDBConfigSetter;
import org.rocksdb.BlockBasedTableConfig;
import org.rocksdb.Cache;
import org.rocksdb.LRUCache;
import org.rocksdb.Options;
import org.rocksdb.WriteBufferManager;

/**
 * Bounds the memory of every RocksDB store of the process, the pattern of Kafka Streams' memory
 * management guide ("RocksDB: bound memory"): one static LRU block cache shared by all stores,
 * with a {@code WriteBufferManager} charging the memtables to it and the index and filter blocks
 * cached in it too. Without it each store (two per task here) has its own 50 MiB block cache and
 * its own memtables, so memory grows with the partitions.
 *
 * <p>The same settings as dev-materiels' {@code StoreOptions::with_cache_bytes} and
 * {@code rocks_options} ({@code state/src/store.rs}): a cache of {@code --cache-mib} (64 MiB by
 * default, as {@code --store-cache-mb}), half of it for memtables, writers not stalled, 16 MiB
 * memtables at most 3 per store, a bloom filter of 10 bits per key on the SST files (Kafka
 * Streams' default filter, kept) and on the memtables.
 */
public final class BoundedMemoryRocksDbConfig implements RocksDBConfigSetter {
    /** The total, in bytes, passed in the Streams configuration under this key. */
    static final String CACHE_BYTES_CONFIG = "rail.rocksdb.cache.bytes";
    static final long DEFAULT_CACHE_BYTES = 64L << 20;
    private static final long MEMTABLE_BYTES = 16L << 20;
    private static final int MEMTABLES = 3;

    /** Shared by every store of the process, so created once; never closed (they live as long as the process). */
    private static Cache cache;
    private static WriteBufferManager writeBufferManager;

    private static synchronized void init(long cacheBytes) {
        if (cache != null) return;
        // -1: RocksDB picks the shard count; 0.5: the share kept for index and filter blocks
        // (high priority), RocksDB's default for the cache dev-materiels makes.
        cache = new LRUCache(cacheBytes, -1, false, 0.5);
        // allowStall false: as dev-materiels (a stalled writer may wait on a flush no store triggers).
        writeBufferManager = new WriteBufferManager(cacheBytes / 2, cache, false);
    }

    @Override
    public void setConfig(String storeName, Options options, Map<String, Object> configs) {
        Object configured = configs.get(CACHE_BYTES_CONFIG);
        init(configured == null ? DEFAULT_CACHE_BYTES : Long.parseLong(configured.toString()));

        BlockBasedTableConfig table = (BlockBasedTableConfig) options.tableFormatConfig();
        table.setBlockCache(cache);
        table.setCacheIndexAndFilterBlocks(true);
        table.setCacheIndexAndFilterBlocksWithHighPriority(true);
        table.setPinTopLevelIndexAndFilter(true);
        // Kafka Streams already set a BloomFilter (10 bits per key, full filters) on `table`: kept.
        options.setWriteBufferManager(writeBufferManager);
        options.setWriteBufferSize(MEMTABLE_BYTES);
        options.setMaxWriteBufferNumber(MEMTABLES);
        // Most lookups are for orders not seen yet: a bloom filter on the memtables too, so a
        // miss does not walk their skip lists.
        options.setMemtablePrefixBloomSizeRatio(0.1);
        options.setMemtableWholeKeyFiltering(true);
        options.setTableFormatConfig(table);
    }

    @Override
    public void close(String storeName, Options options) {
        // The cache and the write buffer manager are shared by every store: not closed here.
    }
}
