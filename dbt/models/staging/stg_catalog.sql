-- The SKU is normalised before the window, not inside it: partitioning by the expression took twice as long,
-- and a filter on the column (the not-null test) now runs before the window.
with source as (

    select *, lower(trim(product_sku_hash)) as product_sku
    from {{ source('coveo', 'catalog_raw') }}
    where product_sku_hash is not null

),

latest as (

    select *
    from source
    qualify row_number() over (partition by api_key, product_sku order by etl_timestamp desc, etl_id) = 1

),

final as (

    select
        api_key,
        product_sku,
        nullif(category_hash, '') as category_path,
        {{ category_level('category_hash', 1) }} as top_category,
        try_cast(price_bucket as double) as price_bucket,
        nullif(description_vector, '') as description_vector,
        nullif(image_vector, '') as image_vector,
        etl_id
    from latest

)

select * from final
